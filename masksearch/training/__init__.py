"""masksearch.training"""
