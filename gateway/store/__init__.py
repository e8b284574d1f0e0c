"""The bottom of the domain: engines and transactions, the models and their table handles,
prepared statements, group-commit batching, content-addressed blobs and the migrations."""
