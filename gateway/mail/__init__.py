"""What mail looks like, with no database and no I/O: studio and signed reply addresses,
subject keys, attachment names and media types. The bottom of the import graph: settings,
inbound, outbound and the edges all use it, and it imports nothing of ours."""
