"""Benchmarks: engine speed (`bench speed`) and ReVOS (`bench revos`)."""
