"""The dock's parts: small widgets, each bound to its settings; the dock lays them out."""
