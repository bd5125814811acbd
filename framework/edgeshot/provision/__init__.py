"""edgeshot.provision"""
