"""masksearch.retrieval"""
