"""What a spec costs before it runs: FLOPs, memory and step time per node and per rank (`graphspec cost`)."""
