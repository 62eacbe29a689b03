"""masksearch.data"""
