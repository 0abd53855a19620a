"""The layers graphspec owns: adapters that give every backbone one interface, fusion, poolers, heads.

Every module here takes flat constructor arguments (never a spec), and every
node module returns a dict of its output ports. A sequence travels as a pair
`(hidden (B, T, D), mask (B, T) bool, True = a real token)`.
"""
