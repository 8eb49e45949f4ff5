"""Generated stubs of proto/reaseq/v1/ranking.proto; regenerate with `make proto`."""
