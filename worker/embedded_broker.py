"""The embedded broker: kombu's filesystem transport with atomic message writes.

Needs no server; processes on one host share a folder. Upstream's writer creates the message
file and then fills it, so a consumer that lists the folder in between moves away an empty
file and crashes on it (JSONDecodeError). Here a message is written under a name consumers
ignore and renamed into place, which is atomic on POSIX.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.part")  # not a "<queue>.msg"
        with open(partial, "wb") as file:
            file.write(dumps(payload).encode())
        os.replace(partial, final)


class Transport(filesystem.Transport):
    Channel = Channel

    @property
    def default_connection_params(self) -> dict[str, Any]:
        # A folder, not a host: without a hostname to default to, kombu does not warn on
        # every connection that none was supplied.
        return {}
