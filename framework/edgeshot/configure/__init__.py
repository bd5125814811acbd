"""edgeshot.configure"""
