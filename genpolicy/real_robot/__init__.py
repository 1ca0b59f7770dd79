"""Deployment: the Robot protocol, the fixed-rate controller, the safety filter, the policy server and the recorder."""
