"""Tokens: opaque, single-use, certificate-bound handles minted and verified only by this broker.

`format` owns the token's wire form (pure); `store` the one store interface and its records;
`memory` and `redis` the two implementations.
"""
