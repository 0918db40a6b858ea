"""
An RFC 9111 shared HTTP cache.
"""
