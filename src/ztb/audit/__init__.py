"""The audit chain: canonical entries, their hashes and signatures, and the auditor's verifier.

The package never imports the network edges: it knows entries and files, never HTTP.
"""
