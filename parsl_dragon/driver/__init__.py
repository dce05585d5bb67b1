"""The driver side: the executor Parsl loads, its blocks, its links to servers and its futures."""
