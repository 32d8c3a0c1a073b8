"""
The guard's own endpoints, one unit each: login, callback, logout,
back-channel logout, userinfo, health/ready and forward auth.
"""
