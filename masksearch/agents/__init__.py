"""masksearch.agents"""
