"""edgeshot.control"""
