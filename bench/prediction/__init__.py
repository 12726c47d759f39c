"""The prediction benchmark: does an alert fire before the loss explodes, and how early?"""
