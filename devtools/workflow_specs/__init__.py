"""Example-workflow specs: each module defines WORKFLOWS, a list of devtools.workflow_builder.Spec."""
