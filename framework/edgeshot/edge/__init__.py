"""edgeshot.edge"""
