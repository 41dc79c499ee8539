"""The client's side of each protection mode (DESIGN §4): one strategy per mode.

:class:`~fedmuscle_secure.client.state.FedMuscleClient` holds exactly one, chosen when it
is built (plain unless it is given a secagg or ckks one), and never asks which mode is on.
"""
