"""masksearch.eval"""
