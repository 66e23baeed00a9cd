"""A Flower Grid that runs ClientApps in this process, for fast protocol-level tests.

Every message goes through Flower's protobuf serialization both ways, as on the wire (the
SecAgg+ workflow sends one shared RecordDict to all nodes and relies on that copy). A client
that raises replies with an error message, as a node whose ClientApp fails does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow
from flwr.supercore.task_identity import TaskIdentity

FIRST_NODE_ID = 1001


def _wire(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))


class InProcessGrid:
    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict) -> None:
        self.client_app = client_app
        self.run = SimpleNamespace(run_id=1)
        self.contexts = {
            FIRST_NODE_ID + i: Context(
                run_id=1,
                node_id=FIRST_NODE_ID + i,
                node_config={"partition-id": i},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(num_nodes)
        }
        self.replies: list[Message] = []  # every message any client sent to the server
        self.answered: dict[str, Message] = {}  # replies not yet pulled, by message id
        self.pull_interval = 0.0

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages) -> list[str]:
        """Each message under a fresh id, as Flower's grids do, its client run at once (so a
        slow machine never runs into the workflow's reply timeout, which starts after the
        push)."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            self.answered[message.metadata.message_id] = self._answer(message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        """The reply to the earliest pushed message among `message_ids`: replies arrive one
        per pull, in the order the messages were sent."""
        wanted = set(message_ids)
        for message_id in self.answered:
            if message_id in wanted:
                return [self.answered.pop(message_id)]
        return []

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        ids = self.push_messages(messages)
        return [reply for _ in ids for reply in self.pull_messages(ids)]

    def _answer(self, message: Message) -> Message:
        message = _wire(message)
        try:
            reply = self.client_app(message, self.contexts[message.metadata.dst_node_id])
        except Exception as err:  # a failing node answers with an error
            reply = Message(Error(code=0, reason=repr(err)), reply_to=message)
        # a copy: the workflow consumes the arrays of the replies it is given
        self.replies.append(_wire(reply))
        return _wire(reply)


@contextmanager
def server_task() -> Iterator[Context]:
    """The server's context, with Flower's task identity set as a ServerApp run has it."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def run_rounds(
    grid: InProcessGrid, strategy: Strategy, fit_workflow, rounds: int = 1
) -> LegacyContext:
    """Run `rounds` rounds of Flower's legacy DefaultWorkflow over `grid`."""
    with server_task() as server_context:
        context = LegacyContext(
            context=server_context, config=ServerConfig(num_rounds=rounds), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, context)
        return context


def run_fedmem_in_process(config, resume: bool = False) -> dict:
    """A whole fedmem federated run (real ServerApp logic, real clients and mods) over an
    in-process grid: no Ray, so it takes seconds. Returns the run's summary."""
    from clients.app import make_client_app
    from fedmem.runs.recorder import RunRecorder
    from server.app import run_server

    grid = InProcessGrid(make_client_app(config), config.federation.num_clients, {})
    with server_task() as context:
        return run_server(grid, context, config, RunRecorder(config), resume=resume)
