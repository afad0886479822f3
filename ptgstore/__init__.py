"""ptgstore: sensor frames from headsets to models, over REST and WebSockets, in Redis Streams."""
