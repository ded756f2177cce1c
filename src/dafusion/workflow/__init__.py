"""What runs while Snakemake parses the workflow: the config's validation, the plan of jobs
(targets, inputs, params, resources), result paths, the cost model and the machine checks.

No job imports this subpackage (a test checks every rule's code fingerprint), so editing it
reruns only the jobs whose params or inputs the edit changes. It imports no torch: the
workflow starts in a second even on a login node.
"""
