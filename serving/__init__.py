"""Serving: vLLM OpenAI servers for base and fine-tuned models, behind the API's /v1/chat/completions.

* `engines`  one vLLM server process: its command line, environment, health and stop.
* `manager`  which engine serves which model: started on first use, shared by models with the same weights,
             least recently used one stopped past the budget, crashed ones restarted, idle ones stopped,
             engines of newly fine-tuned models started ahead of the first request; or, in `external` mode,
             the base URLs of servers that something else runs.
* `proxy`    forwards one request to an engine and streams the answer back, with the one mapper from
             engine failures to OpenAI-shaped errors.
* `access`   which model ids a project may call (base models, its fine-tuned models and checkpoints, shared
             checkpoints), with a clear 404 for the rest.
"""
