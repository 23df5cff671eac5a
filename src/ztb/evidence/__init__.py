"""Evidence for auditors (SPEC section 9): the controls' shared probing helpers, the bundle
`ztb evidence` writes, and the offline check of a bundle. Never part of the data path."""
