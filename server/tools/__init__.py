"""Command-line tools that sit beside the server: benchmarks and, later, evaluation."""
