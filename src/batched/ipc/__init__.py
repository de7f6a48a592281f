"""One batcher for many processes on one machine.

    # the model process                      # every other process (web workers...)
    batched.serve(embed, name="embed")       embed = batched.connect("embed")
                                             embed("text"); await embed.acall("text")

``batched.serve`` (batched.ipc.server) serves a processor; ``batched.connect``
(batched.ipc.client) gives a client called like the processor; requests and
answers cross through shared memory (batched.ipc._channel). Linux only.
docs/scaling.md says how it works, what it costs and what it is safe against.
"""

from batched.errors import ServerGoneError
from batched.ipc.client import AsyncClient, Client, connect
from batched.ipc.server import Server, serve

__all__ = ["AsyncClient", "Client", "Server", "ServerGoneError", "connect", "serve"]
