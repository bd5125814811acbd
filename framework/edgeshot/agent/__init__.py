"""edgeshot.agent"""
