"""The research tools: evaluation tasks and metrics, the baselines (context-aware decoding), the head
profiler and the speed benchmark. The runtime pipeline (``pasta_rag`` itself) never imports them."""
