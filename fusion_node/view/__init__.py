"""``fusion view``: a live page of a rig in the browser, served locally with every asset shipped.

:mod:`fusion_node.view.server` listens to the rig like any subscriber and pushes small updates
to the page over Server-Sent Events; ``static/`` holds the page, its script and its style.
"""
