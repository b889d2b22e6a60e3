"""Workers' writes, sent to the main process's storage actor over HTTP.

A worker process serves part of the APIs and reads the shared SQLite
database itself, but writes nothing: its :class:`~ranvier.storage.Storage`
is given a :class:`~ranvier.replication.client.RemoteWriter` as its write
backend, and its event paths a
:class:`~ranvier.replication.client.ReplicationEventPersister`. Both send
each write to the main process's replication listener
(:class:`~ranvier.replication.server.ReplicationApp`), which runs it on the
one storage actor and answers with its result or its error. core cannot
tell the difference.
"""
