"""Deep Learning > List Models: what this server can run, with each model's card."""
from dlcore.omero import scripts as dls

if __name__ == "__main__":
    client = dls.client(
        "List_Models.py",
        "List the pipelines and models installed on this server, with what each was trained on, how "
        "well it does and its parameters. Nothing is changed.",
    )
    dls.run_script_file(client, dls.list_models_script)
