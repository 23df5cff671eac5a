"""The witness of SPEC section 7: a separate service, on another host, that remembers the latest
checkpoint of each log it knows, cosigns only checkpoints consistent with it (C2SP tlog-witness
and tlog-cosignature), and so makes a cut or rewritten log visible.

It shares nothing with a broker but the log's public checkpoint key and the CA of the brokers'
client certificates; it never reads a broker's files.
"""
