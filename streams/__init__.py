"""The Faust app: thin agents around trovemeter's pure pairing, state and usage logic."""
