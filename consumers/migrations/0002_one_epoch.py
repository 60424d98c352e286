"""One epoch only: a unique flag, after keeping the first of any epochs a creation race left."""

from django.db import migrations, models


def keep_the_first_epoch(apps, schema_editor):  # type: ignore[no-untyped-def]
    epoch = apps.get_model("presentation", "Epoch")
    rows = epoch.objects.using(schema_editor.connection.alias).order_by("created_at", "id")
    first = rows.first()
    if first is not None:
        rows.exclude(pk=first.pk).delete()


class Migration(migrations.Migration):
    dependencies = [("presentation", "0001_initial")]

    operations = [
        migrations.RunPython(keep_the_first_epoch, migrations.RunPython.noop),
        migrations.AddField(
            model_name="epoch",
            name="singleton",
            field=models.BooleanField(default=True, editable=False, unique=True),
        ),
    ]
