"""Several gateway instances sharing live replies through Redis (or Valkey).

A reply is produced by one instance, its owner, and served by any: the owner ships
its deltas to a log and a channel in Redis (:mod:`.shipper`, :mod:`.scripts`), other
instances follow them (:mod:`.bus`, :mod:`.followers`, :mod:`.mirror`); a lease with
a fencing epoch lets another instance end the replies of an owner that died
(:mod:`.lease`, :mod:`.successor`). :mod:`.link` is the one connection to Redis,
:mod:`.names` what is kept there, :mod:`.node` (:class:`~.node.ClusterNode`) puts it
together. PostgreSQL holds the conversations.
"""
