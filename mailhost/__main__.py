from mailhost.cli import main

main(prog_name="mailhost")
