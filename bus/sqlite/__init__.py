"""`ENGINE: "bus.sqlite"`: Django's SQLite backend, with the threads of a process taking turns to write."""
