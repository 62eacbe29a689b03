"""masksearch.graphs"""
