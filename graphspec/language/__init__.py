"""The spec language, the lowest layer: the schema (one class per kind), spec files read with every value's
location, the checks that need no graph, the errors every layer raises, plugin loading. No torch."""
