"""Local stand-ins for cloud services, speaking their real wire protocols on loopback.

The provider clients are real code; these servers let tests, the call simulator and
the benchmarks exercise them without the internet.
"""
