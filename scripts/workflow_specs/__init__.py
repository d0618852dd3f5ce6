"""Example-workflow specs: each module defines WORKFLOWS, a list of workflow_builder.Spec."""
