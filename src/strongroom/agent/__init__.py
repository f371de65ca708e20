"""The agent: the local process every PKCS#11 module talks to (``docs/agent-protocol.md``).

It holds all PKCS#11 state of the applications on one host (slots, sessions, logins,
find cursors, pending outputs), keeps mTLS connections to the cluster's nodes, and
logs in on the applications' behalf with credentials it keeps in memory only.

Modules: :mod:`config` (TOML file), :mod:`server` (the Unix socket), :mod:`nodes` (node
connections, health, choice, re-authentication), :mod:`passthrough` (the SDK's and CLI's
node-protocol requests, relayed), :mod:`state` (applications and sessions), :mod:`runtime`
(agent-wide state, ending logins and sessions), :mod:`mechanisms` (the token's mechanisms, as
the nodes list them), :mod:`attrcodec` (raw attribute bytes <-> typed values), :mod:`returns`
(which CK_RV each function may return), :mod:`functions` (one module per chapter of the
PKCS#11 specification, registering each handler under its function name), :mod:`main`
(``strongroom agent --config FILE``). Start, stop and status of the agent of a ``strongroom
up`` directory are :mod:`strongroom.local.agent`'s.

Model
-----

- One slot (``slot_id`` of the configuration, default 0) whose token is the cluster.
- An application is an ``app_id`` (one C_Initialize of one process); its login state is
  shared by all its sessions and connections and ends with C_Logout, with its last
  session, with C_Finalize, or with its last connection.
- PIN ``username:password``; CKU_USER logs in a crypto user, CKU_SO an admin.
- A PKCS#11 session gets a node ``p11session`` only when it needs node state (a
  multi-part operation, a session object). All node state of an application lives on
  one node connection, its *home*, so that session objects are seen by all its
  sessions. Calls that hold no node state go to the least loaded connection.

What happens when something fails
---------------------------------

====================================================  ===========================================================
Event                                                 What the application gets
====================================================  ===========================================================
Node restarted / connection re-opened between calls   nothing: the next call reconnects and logs in again
Connection lost during an idempotent call (reads,     nothing: the call is retried once, after re-login, on the
find, attributes, random, single-part crypto)         reconnected connection or another node
Connection lost during a call that makes or changes   CKR_DEVICE_REMOVED (the outcome is unknown; not retried)
token objects
No node reachable for ``timeouts.reconnect_wait``     CKR_DEVICE_REMOVED (C_GetTokenInfo: CKR_DEVICE_ERROR
                                                      unless a recent answer is cached)
A node does not answer in ``timeouts.request``        CKR_DEVICE_ERROR
Node forgot the login (idle expiry, worker restart)   nothing: re-login with the held credentials, call retried
Held credentials refused on re-login (password        one attempt, then none (no lockout): CKR_USER_NOT_LOGGED_IN
changed elsewhere, user locked or deleted)            where the function lists it, CKR_OBJECT_HANDLE_INVALID for
                                                      object reads, else CKR_FUNCTION_FAILED; C_Logout + C_Login
Operation initialized but given no data yet, when     nothing: init is run again on a new node session
its node session is lost
Multi-part operation that has taken updates, when     CKR_FUNCTION_FAILED, and the operation ends (the node held
its node session is lost                              its intermediate state)
Session objects, when the node session is lost        gone: CKR_OBJECT_HANDLE_INVALID / CKR_KEY_HANDLE_INVALID
Making a session object when the node session is      nothing: retried once on a new node session (what the lost
lost mid-call                                         attempt made was lost with it)
Find cursors, kept outputs of size queries            kept in the agent: unaffected
Agent restarted                                       the module answers CKR_DEVICE_REMOVED, then the application
                                                      initializes and logs in again
A node code the function does not list                CKR_FUNCTION_FAILED (logged)
An unexpected exception in the agent                  CKR_GENERAL_ERROR (logged with its traceback)
====================================================  ===========================================================
"""
