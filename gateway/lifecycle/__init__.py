"""The life of a studio's data after it arrives: trash and restore, purge, erasure, the
deletion log, account deletion (also by a LÖSCHEN mail to the helpdesk), guests' data
rights and the export."""
