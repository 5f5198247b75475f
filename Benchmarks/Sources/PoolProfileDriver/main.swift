import ConnPool
print("driver")
