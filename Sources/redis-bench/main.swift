print("redis-bench: not built yet")
