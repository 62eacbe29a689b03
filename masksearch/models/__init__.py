"""masksearch.models"""
